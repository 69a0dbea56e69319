"""bpref at scale: many small networks per compiled call (``fast``), one network over many
devices (``sharding``)."""
