import os

# Keep the test suite's thread use predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
