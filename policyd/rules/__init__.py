"""The rule language and its sandbox: parse, validate, compile and run one rule file's rules.

Knows nothing of HTTP, watched files or state backends: `policyd.policy` loads a directory into
compiled rules with it, and `policyd.engine` decides requests with them.
"""
