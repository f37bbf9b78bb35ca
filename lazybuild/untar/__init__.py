"""Tar streams from outside, read within bounds and extracted without leaving a root
(see ``extract`` and docs/security.md)."""
