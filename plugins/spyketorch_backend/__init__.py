"""tle's spiking backend: SpykeTorch's model of computation (DoG, latency coding, STDP, R-STDP), batched on PyTorch."""

__all__: list[str] = []
