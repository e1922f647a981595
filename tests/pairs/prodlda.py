"""A ProdLDA-style topic model for bag-of-words count rows, after Pyro's ProdLDA example.

Each document (a row of word counts over ``vocab_size`` words) has a logistic-normal topic
mixture: "logtheta" ~ Normal(0, 1) over ``num_topics`` (event 1), theta = softmax(logtheta).
The decoder maps theta through Dropout, a bias-free Linear (the topic-word matrix) and an
affine-free BatchNorm1d to word logits, and the counts are observed at "obs" under a
Multinomial. The encoder (counts -> Softplus MLP -> Dropout -> loc, log-variance, each through
an affine-free BatchNorm1d) is the amortized guide.

For tests: a pair whose data are counts (not binary pixels), whose observed site is not
named "x", whose likelihood is Multinomial, and whose networks use BatchNorm and Dropout
(mode-dependent; no broadcasting over an extra leading particle dimension).

Sites: "logtheta" (latent, event 1) and "obs" (observed, event 1), in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn


class TopicEncoder(nn.Module):
    def __init__(self, vocab_size, num_topics, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(vocab_size, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Dropout(dropout),
        )
        self.fc_loc = nn.Linear(hidden, num_topics)
        self.fc_logvar = nn.Linear(hidden, num_topics)
        # without affine parameters, as ProdLDA does, to keep the encoder from collapsing
        self.bn_loc = nn.BatchNorm1d(num_topics, affine=False)
        self.bn_logvar = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, counts):
        h = self.net(counts)
        loc = self.bn_loc(self.fc_loc(h))
        logvar = self.bn_logvar(self.fc_logvar(h))
        return loc, (0.5 * logvar).exp()


class TopicDecoder(nn.Module):
    def __init__(self, vocab_size, num_topics, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.topic_words = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)

    def forward(self, theta):
        return self.bn(self.topic_words(self.drop(theta)))  # word logits


class ProdLDA(nn.Module):
    def __init__(self, vocab_size, num_topics=5, hidden=32, dropout=0.2):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.hidden = hidden
        self.dropout = dropout
        self.encoder = TopicEncoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = TopicDecoder(vocab_size, num_topics, dropout)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        # torch's Multinomial takes one Python int total_count for the whole batch. Its
        # log_prob uses each row's own sum, log n_d! - sum_w log x_dw! + sum_w x_dw log p_dw,
        # and never total_count, so with total_count = the batch's largest document length
        # the density is exactly each document's multinomial; total_count only bounds the
        # support check (row sums <= total_count) and would set the length of *sampled*
        # documents (all equal to the longest one), the one approximation here.
        total_count = int(x.sum(-1).max())
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(x.shape[0], self.num_topics)
            scale = x.new_ones(x.shape[0], self.num_topics)
            logtheta = pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))
            theta = logtheta.softmax(-1)
            logits = self.decoder(theta)
            pyro.sample("obs", dist.Multinomial(total_count, logits=logits), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))
