"""greyproxy: a policy-enforcing egress firewall proxy for sandboxed AI agents."""

__version__ = "0.1.0"
