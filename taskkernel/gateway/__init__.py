"""The Jupyter gateway protocol on taskkernel notebooks."""
