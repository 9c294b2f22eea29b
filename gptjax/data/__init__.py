"""Input pipeline, one module a stage; host-side numpy only.

jax is deliberately not imported here: the pipeline must never create device arrays (that
starves the accelerator); the train loop places each batch on the mesh. This file imports
nothing, so a module that needs one stage (steps.py needs labels.IGNORE_INDEX) loads only it.

The readers, label vocabularies and encoders are per format; which of them a task uses is its
entry in gptjax/tasks.py. Flow: readers (split files or a hub dataset -> examples.py's examples)
-> labels (the vocabulary of the train split, the task's label check) -> encode (tokenise once)
-> batching (cheap, deterministic per (seed, epoch), restartable at a batch offset).
synthetic.py makes the offline demos' corpora.
"""
