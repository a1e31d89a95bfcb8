"""canvas-sync: a real-time collaborative canvas backend.

Projects live in memory and answer edits over WebSocket; a worker thread saves changed
objects to DynamoDB in batches; several replicas converge through the table.
"""

__version__ = "0.1.0"
