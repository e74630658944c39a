"""Kademlia DHT (``/ipfs/kad/1.0.0``, ``/ipfs/lan/kad/1.0.0``): the routing table so far."""
