"""What the Prefect flows stand on besides the tasks: running the project's tools from a worker
(``proc``), the DVC workspace (lock, params.yaml, git revision: ``workspace``), MLflow tracking
(``tracking``) and the run records built from the stage outputs (``records``, ``clip``).

Plain functions over files and processes (no Prefect task or flow is defined here); ``lines/``
never imports this package."""
