"""Scene data: the ovs3d-data dataparser, label lists and procedural test scenes."""
