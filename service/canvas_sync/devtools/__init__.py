"""Development tooling, not the service: local DynamoDB Local, Redis and replica processes
for ``canvas-sync dev``, the tests, the load tests and the benchmarks.

The runtime image leaves this package out (see the Dockerfile); nothing outside it
imports it except the ``dev`` command, which says so when it is missing.
"""
