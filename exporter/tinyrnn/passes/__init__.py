"""IR -> IR and IR -> plan passes: ``quantize`` (formats, integer weights, multipliers),
``lower`` (every arithmetic choice of the C as a typed :mod:`tinyrnn.backend.plan`) and
``layout`` (each kernel family's weight layout)."""
