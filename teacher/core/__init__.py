"""The data contract shared by teacher, student and eval.

Tasks and their data (``tasks``), versioned prompt templates (``templates``), the
distillation record format (``records``), the model catalogue (``models``) and the
typed YAML config loader (``config``). Nothing here serves requests or trains:
``teacher.serving`` serves, ``teacher.distill`` generates data, ``student`` trains,
``eval`` measures — and each of them reads and writes through these modules.
"""
