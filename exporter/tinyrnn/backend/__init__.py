"""The backend: a plan -> C text. ``plan`` (the typed kernel plan), ``render`` (prints it with
the Jinja2 templates), ``cformat`` (120-column line breaking), ``interface`` (the typed C
interface record), ``manifest`` (NAME.json bound to the C), ``dspasm`` and ``v6masm`` (the
assembly unit kernels of NAME_kernels.S)."""
