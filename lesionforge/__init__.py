"""The ``lesionforge`` command as a module: ``python -m lesionforge ...``.

What ``torchrun --nproc_per_node N -m lesionforge gan train ...`` starts in each of its
processes. The code lives in `augment`, `gan` and `downstream`; the command in
`downstream.cli`.
"""
