"""The proofs: ``reference`` (the bit-exact integer reference), ``simulate`` (the IR in float),
``evaluate`` (the plan in numpy), ``torchref`` (torch modules rebuilt from the IR), ``verify``,
``metrics`` and ``report`` (torch against the C)."""
