"""Fleet mode (docs/fleet.md): several greyproxy nodes on one PostgreSQL. `link` carries change
notifications between nodes over LISTEN/NOTIFY; `sync` applies another node's changes to this
node's memory; `node` names this node."""
