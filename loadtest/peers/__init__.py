"""The peers: Hocuspocus and y-websocket's server beside canvas-sync, driven by one node
script (``driver.mjs``). ``install.py`` fetches them from npm into the cache folder;
``loadtest/bench/peers.py`` is the benchmark.
"""
