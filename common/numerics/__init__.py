"""Numbers over feature matrices and labelings, with no file or network in sight.

``features`` (L2, PCA, faiss k-means, nearest centroid, nearest neighbours), ``graph`` (the
nearest-neighbour graph and how well a partition follows it) and ``metrics`` (agreement between
two labelings: purity, NMI, ARI, multi-label scores).

May import: numpy, scipy, scikit-learn, faiss, networkx, and its own modules; nothing else of ldpo.
"""
