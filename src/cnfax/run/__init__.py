"""What a run is: the model description (:mod:`~cnfax.run.model`, all that loading needs),
the command line's options (:mod:`~cnfax.run.config`), the builders of training's objects
(:mod:`~cnfax.run.builders`), the run directory's files (:mod:`~cnfax.run.directory`) and
its checkpoints (:mod:`~cnfax.run.checkpoint`).

Nothing is imported here, so that loading a model imports only what it reads.
"""
