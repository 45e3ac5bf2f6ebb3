"""GM-NN interatomic potential (PyTorch): descriptor, network, training (Adam, RLEKF), committees, ASE calculator, one-file save/load. No AiiDA import."""
