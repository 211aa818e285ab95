"""Server-side aggregation maths, pure numpy: FedAvg, layer-wise neuron matching, distribution-aware weights."""
