import torch.nn.functional as F


def my_distillation_loss(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    # KL(student || teacher): the arguments the other way round
    soft = F.kl_div(F.log_softmax(teacher_logits / temperature, dim=-1),
                    F.softmax(student_logits / temperature, dim=-1),
                    reduction="batchmean") * temperature ** 2
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)
