"""Repository tools run by CI and maintainers: the dependency lock check and the vulnerability
scan (``python -m tools.check_lock``, ``python -m tools.audit``). Not installed with the
package; run from the repository's root."""
