"""MechanisticProbe (Hou et al., 2023): reasoning trees read from attention."""
