"""Jupyter front ends on taskkernel: a Jupyter kernel whose cells run on taskkernel's workers.

`kernel.py` is the kernel process (ipykernel's machinery on the Jupyter side, the HTTP client on
the taskkernel side), `kernelspec.py` the `taskkernel kernelspec install` command that registers it
with Jupyter, and `cost.py` the round-trip measurement the benchmarks use. Nothing here is imported
by the service itself: ipykernel and jupyter_client are needed only by this subpackage (the
`jupyter` extra).
"""
