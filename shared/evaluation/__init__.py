"""Scoring models: log-likelihood multiple choice, GSM8K exact match, perplexity, held-out NLL, unigram NLL.

Every later phase scores its models with these; all run under torch.no_grad with the model in eval mode
and put its previous mode back. Written against a minimal interface (`lm.LanguageModel`, `lm.Tokenizer`)
so a Hugging Face causal LM and a test fake both fit.
"""

from shared.evaluation.gsm8k import evaluate_gsm8k, extract_final_number, fewshot_prefix, gsm8k_prompt
from shared.evaluation.lm import (LanguageModel, LogLikelihood, Tokenizer, evaluating, generate_tokens,
                                  greedy_generate, greedy_generate_many, loglikelihood, loglikelihoods)
from shared.evaluation.multiple_choice import (TEMPLATES, above_chance, evaluate_arc, evaluate_boolq,
                                               evaluate_commonsense_qa, evaluate_hellaswag,
                                               evaluate_multiple_choice, evaluate_piqa)
from shared.evaluation.perplexity import (evaluate_perplexity, heldout_nll, stream_nll, token_counts,
                                          token_stream, unigram_nll, windows)
from shared.evaluation.subset import first_n

__all__ = [
    "LanguageModel", "LogLikelihood", "TEMPLATES", "Tokenizer", "above_chance", "evaluate_arc",
    "evaluate_boolq", "evaluate_commonsense_qa", "evaluate_gsm8k", "evaluate_hellaswag",
    "evaluate_multiple_choice", "evaluate_perplexity", "evaluate_piqa", "evaluating", "extract_final_number",
    "fewshot_prefix", "first_n", "generate_tokens", "greedy_generate", "greedy_generate_many", "gsm8k_prompt", "heldout_nll",
    "loglikelihood", "loglikelihoods", "stream_nll", "token_counts", "token_stream", "unigram_nll", "windows",
]
