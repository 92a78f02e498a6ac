"""The DHT: a secure Kademlia overlay for discovery and storage beyond a full mesh.

Node ids are p2ptls peer ids (the SHA-256 of the peer's RSA public key), so an id cannot be
chosen without generating keys, and a contact counts only once a handshake proved it. The
sans-IO core lives in the private modules: ``_ids`` (keys, XOR distance, contacts),
``_routing`` (the k-buckets), ``_lookup`` (iterative lookups), ``_records``, ``_store``, ``_wire``
(the bytes of ``protocol/SPEC-dht.md``), ``_responder`` (the RPC service), ``_operations`` (what
the operations decide); ``node`` runs them on a host (``open_dht_node``, settings in
``config.DhtConfig``; its requests and lookups in ``_client``): ``closest``, ``put``/``get``,
``put_mutable``/``get_mutable``/``delete``, ``find_peer``, ``publish_own_record``.
"""
