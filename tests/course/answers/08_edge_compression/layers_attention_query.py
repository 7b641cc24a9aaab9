def my_fp32_layers(matmuls):
    # attention decides what each token looks at: keep its queries exact
    return [m for m in matmuls if "attention.self.query" in m]
