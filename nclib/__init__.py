"""nclib: the thin library behind the executable book on neural collapse.

Each module is one idea and links back to the paper (Zhu et al., NeurIPS 2021,
"A Geometric Analysis of Neural Collapse with Unconstrained Features"):

- :mod:`nclib.etf`          the simplex equiangular tight frame (Definition A.1)
- :mod:`nclib.metrics`      the neural-collapse metrics NC1-NC4 (Section 4, eqs. 7-10)
- :mod:`nclib.ufm`          the unconstrained feature model (eq. 4), its closed-form optimum
                            (Theorem 3.1, Appendix B) and solvers
- :mod:`nclib.landscape`    second-order analysis and the convex counterpart (Theorem 3.2, Appendix C)
- :mod:`nclib.data`         datasets, the paper's preprocessing, subsets, random labels,
                            augmentation (Section 4)
- :mod:`nclib.models`       ResNet18/50 and the MLP with features, fixed ETF classifier and
                            d = K (Sections 4.2-4.3)
- :mod:`nclib.train`        the paper's training protocol with NC tracking (Section 4)
- :mod:`nclib.experiments`  named configurations of Figures 3-7 and the results store
- :mod:`nclib.plots`        one plotting style for the book
- ``python -m nclib``       the batch runner for the chapters

Shape convention everywhere: features are rows, ``H`` is (N, d), ``W`` is (K, d),
``b`` is (K,), labels ``y`` are (N,) integers.  The paper's H is d x N.
"""

__version__ = "0.1.0"
