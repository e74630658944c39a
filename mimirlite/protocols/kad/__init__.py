"""Kademlia DHT (``/ipfs/kad/1.0.0``, ``/ipfs/lan/kad/1.0.0``): so far the routing table and the provider
store, both sans-IO."""
