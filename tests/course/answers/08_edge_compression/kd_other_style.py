import torch
import torch.nn.functional as F


def my_distillation_loss(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    T = temperature
    log_student = torch.log_softmax(student_logits / T, dim=1)
    teacher = torch.softmax(teacher_logits / T, dim=1)
    kl = (teacher * (torch.log(teacher.clamp_min(1e-12)) - log_student)).sum(dim=1).mean()
    hard = F.nll_loss(torch.log_softmax(student_logits, dim=1), labels)
    return alpha * (T * T) * kl + (1 - alpha) * hard
