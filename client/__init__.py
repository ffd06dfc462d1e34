"""The client side of the kit, in rooms (docs/development.md, "Layout"): the Triton client
(``triton``), imaging files in and out (``imaging``), the batch engine (``batch``), the
hospital integration (``hospital``), and the front ends here (``cli``, ``options``, ``ui``)."""
