"""One stage of the pipeline per file, in the order data flows:

discovery (+ _layouts: BraTS 2023, BIDS) -> volume (+ _stream) -> store (+ _contract) ->
preprocessing (+ _masks, _scaling, _show) -> phantoms (`smri synth`) -> data (+ _dataset) ->
models -> training (+ _tensorboard, _distributed) -> model_io_export -> evaluation_explain ->
metrics -> comparison -> plots.
"""
