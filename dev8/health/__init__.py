"""Health: the probes (process, TCP, HTTP, exec) and the prober actors that run them."""
