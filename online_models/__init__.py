"""Online models: plain Python/NumPy/PyTorch/River, no Kafka or Faust inside.

Each model learns one event at a time (`learn_one`) and answers for one
(`score_one` / `predict_one`), is picklable, and is driven by the Faust agents in
`agents/` or by the prequential evaluations in `online_models/evaluation/`.
"""
