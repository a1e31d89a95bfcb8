"""The suite has two halves: ``unit/`` (pure logic and the service in one process: no Java,
Redis, browser or network; seconds) and ``system/`` (real processes: DynamoDB Local,
redis-server, replicas, Chromium, Helm's engine). ``make unit`` runs the first alone;
``make test`` runs both."""
