"""The built-in tasks, one module each: ``gan``, ``tokenizer``, ``prior``.

Each module registers its :class:`~bigtrain.train.task.Task` subclass with ``@register_task``;
``bigtrain.train.task.task_class`` imports every module here on first use, so a new family's task
is one new file in this folder and nothing else to edit.
"""
