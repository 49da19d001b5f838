"""The subject artifact and its activation, used by both stages.

`subject.Subject` (what V-Warper knows about one subject; public as ``vwarper.Subject``), `store` (its
directory on disk), `lora` and `token` (its coarse stage: LoRA on K/V/O and the learned token
embedding) and `activate` (putting that coarse stage on a pipeline for a ``with`` block and taking it
off again). The package itself imports nothing: `inject` needs `activate`, and `Subject.prepare`
needs `inject`, so the class is imported from `subject.subject`, never through this package.
"""
