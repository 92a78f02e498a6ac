"""A synchronous facade for programs that are not async, shaped like distributed-state-network.

``DSNodeServer``, ``DSNodeConfig`` and ``generate_key`` follow the API of the PyPI package
distributed-state-network 1.2.0 (``DSNodeServer.start(config, create_alert, disconnect_callback,
update_callback, receive_callback)`` or ``DSNodeServer(config, ...)``, both of which start the
node, with a :class:`DSNodeConfig` or a dict; ``server.node.update_data(key, value)``,
``server.node.read_data(node_id, key)``, ``peers()``, ``send_to_node()``, ``stop()``), on top of a
:class:`~p2ptls.state.StateNode` that runs ``trio`` in a background thread::

    from p2ptls.state.facade import DSNodeServer, generate_key

    generate_key("network.key")                       # once; copy it to every node (mode 0600)
    bootstrap = DSNodeServer({"node_id": "bootstrap", "port": 8000,
                              "aes_key_file": "network.key", "bootstrap_nodes": []})
    connector = DSNodeServer({"node_id": "connector", "port": 8001,
                              "aes_key_file": "network.key",
                              "bootstrap_nodes": [{"address": "127.0.0.1", "port": 8000}]})
    connector.node.update_data("foo", "bar")          # returns once bootstrap acknowledged it
    bootstrap.node.read_data("connector", "foo")      # "bar"
    connector.stop(); bootstrap.stop()

How the concepts map (what differs from distributed-state-network, and why):

* **Network key.** :func:`generate_key` writes a p2ptls network key file (32 random bytes, mode
  0600). Every node needs it (``network_key_file``, or its other name ``aes_key_file``): it admits
  members to connections and derives the state network id. There is no unencrypted mode, and no
  key given inline (``aes_key`` is refused: a key belongs in a 0600 file).
* **Identities.** Every node has an RSA identity, created on first start and kept in
  ``data_dir`` with its database, its replay state and its own peer record. File names are
  derived from a hash of ``node_id`` (``node-<sha256 prefix>.key``, ``.sqlite3``,
  ``.record.json``): a node id never becomes a path component.
* **Node ids are names.** Peers are identified by their peer ids (hashes of their public keys);
  ``node_id`` is a human name. A node writes its name into its own signed state (key
  ``_dsn.node_id``, reserved), so every other node learns it with the state; ``read_data`` and
  ``send_to_node`` resolve a name to the peer that claims it. Names are claims, not unique: a
  name pinned by a bootstrap record that carries it wins; otherwise if two peers claim one name,
  the call raises :class:`AmbiguousNode`. A 64-digit peer id in hex is accepted wherever a name
  is, and always means that peer (no claimed name can capture it). The name is also the
  ``name`` of the node's advertised peer record.
* **Bootstrap.** The handshake encrypts to the other node's public key, so a node cannot be
  dialled by address alone and p2ptls has no first-contact fetch of a record by address (that
  would be trust on first use). A ``bootstrap_nodes`` entry is therefore resolved to a peer
  record, in this order: ``{"record": {...}}`` (a peer record as ``PeerRecord.to_dict()``, e.g.
  from ``p2ptls identity show``), ``{"record_file": "path"}``, or ``{"address": host, "port":
  port}`` alone, which is looked up among the record files in ``record_dir`` (default
  ``data_dir``): every node writes its own record there when it starts, so nodes that share a
  directory (one machine, or a directory copied between machines) find each other by address as
  in the original README. Record files (and the record directory) must belong to the running
  user and not be writable by group or others. An address
  with no record is a configuration error (:class:`BootstrapError`); further members are
  learned from the network and admitted with ``admit_network_members`` (they must hold the
  network key and prove their own key).
* **Values** are strings (UTF-8) as in the original; ``read_bytes`` returns raw bytes.
  ``update_data`` returns once the write is durable locally and every member connected at that
  moment has acknowledged it (answered a ping sent after the write: see
  :meth:`~p2ptls.state.StateNode.wait_acknowledged`), so a read on such a node right after it
  sees the new value, as with the original's synchronous HTTP push. After ``ack_timeout``
  (default 5 s) it raises :class:`NotAcknowledged`; ``update_data(..., wait=False)`` returns
  once durable locally. ``wait_for_data`` waits for a key on the reading side.
* **Stale state.** A member that goes away is no longer listed by ``peers()`` (as in the
  original), but its last known state stays readable.
* **Callbacks** are called on one dispatcher thread (never the trio thread, so they may call
  back into the facade): ``update_callback()`` after other nodes' state changed (once per
  received message), ``disconnect_callback()`` when a member becomes unreachable,
  ``receive_callback(node_id, data)`` for a message sent with ``send_to_node``, and
  ``create_alert(message)`` for problems (no bootstrap node reached, a peer rejected for breaking
  the protocol, an owner caught equivocating).
* Not carried over: ``whitelist_node_ids`` (every holder of the network key is admitted; use the
  async API's ``peer_filter`` for a policy by peer id), the HTTP transport and ``logging_dir``
  (logging goes to the ``logging`` module, logger ``p2ptls.state.facade``).

The sub-package's modules, by job: :mod:`.config` (:class:`DSNodeConfig`, :func:`generate_key`,
the node's file names), :mod:`.bootstrap` (``bootstrap_nodes`` entries and their resolution to
peer records; the record files themselves are read and written by ``p2ptls.state._bootstrap``,
shared with the node configuration file), :mod:`.server` (:class:`DSNodeServer`: life cycle and
callbacks), :mod:`.node` (:class:`DSNode`: the data methods), ``_bridge`` (what the calls do on
the node's trio thread: names, acknowledged writes, waits), ``_threads`` (the trio thread and
the callback thread) and :mod:`.errors`. Import the names from ``p2ptls.state.facade``.
"""

from __future__ import annotations

from .._bootstrap import BootstrapError, load_peer_record, save_peer_record
from ..errors import NotConnected
from .bootstrap import BootstrapNode, resolve_bootstrap
from .config import NAME_KEY, DSNodeConfig, generate_key
from .errors import AmbiguousNode, FacadeError, NodeStopped, NotAcknowledged, UnknownNode
from .node import DSNode
from .server import DSNodeServer

__all__ = [
    "NAME_KEY",
    "AmbiguousNode",
    "BootstrapError",
    "BootstrapNode",
    "DSNode",
    "DSNodeConfig",
    "DSNodeServer",
    "FacadeError",
    "NodeStopped",
    "NotAcknowledged",
    "NotConnected",
    "UnknownNode",
    "generate_key",
    "load_peer_record",
    "resolve_bootstrap",
    "save_peer_record",
]
