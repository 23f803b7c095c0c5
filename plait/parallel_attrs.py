"""Attributes the parallel wrappers set on a model for the model (and the trainer) to read: its
side of the tensor-parallel contract, kept apart so models need not import the wrappers."""

#: set by plait.tensor_parallel.apply_tp: the logits are sharded on the class dim (loss_parallel)
LOSS_PARALLEL_ATTR = "tp_loss_parallel"
#: set by apply_tp: the residual stream between blocks (so a later pipeline stage's input) is
#: this many sequence shards
SEQ_SHARDS_ATTR = "tp_seq_shards"
#: set by plait.context_parallel.apply_cp on the model and its attention modules: an object with
#: ``positions(local_len, device)`` (global positions of this rank's tokens) and a call
#: ``(q, k, v, dropout_p=, scale=)`` doing attention over the keys/values of the whole sequence
CP_ATTR = "cp_attention"
#: a model's class attribute: the class names of its attention modules that take CP_ATTR
CP_ATTENTION_MODULES = "cp_attention_modules"
#: set by plait.expert_parallel on expert weights that hold a slice of the full (E, ., .) tensor
#: (experts split over ep ranks and their hidden dim over tp): an ExpertShard. Data-parallel
#: engines leave such parameters to it (their gradients reduce over other ranks), gradient
#: norms sum them over its group, init and checkpoints read their place in the full tensor.
EXPERT_SHARD_ATTR = "plait_expert_shard"
