"""Everything that records inside the host: the samplers and their native and Python backends."""
