"""nclib: the thin library behind the executable book on neural collapse.

Each module is one idea and links back to the paper (Zhu et al., NeurIPS 2021,
"A Geometric Analysis of Neural Collapse with Unconstrained Features"):

- :mod:`nclib.etf`      the simplex equiangular tight frame (Definition A.1)
- :mod:`nclib.metrics`  the neural-collapse metrics NC1-NC4 (Section 4, eqs. 7-10)

Shape convention everywhere: features are rows, ``H`` is (N, d), ``W`` is (K, d),
``b`` is (K,), labels ``y`` are (N,) integers.  The paper's H is d x N.
"""

__version__ = "0.1.0"
