"""Infrastructure of the project: the local stack of real servers and the cluster manifests."""
