// Schemas of the distance family (pairwise distances, the fused k-nearest search, triplet
// mining, the triplet and contrastive losses, their backward ops). Kernels: distance_cpu.cpp,
// distance_cuda.cpp, distance_composite.cpp; fake kernels and autograd:
// pyvision_ops/ops/distance.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyvision_ops, m) {
  m.def("pairwise_distance(Tensor x, Tensor? y=None, str metric=\"sqeuclidean\") -> Tensor");
  // output_mask: which of (grad_x, grad_y) to compute; the others come back as empty tensors.
  m.def("_pairwise_distance_backward(Tensor grad, Tensor x, Tensor? y, Tensor out, str metric, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("pairwise_topk(Tensor x, Tensor y, int k, str metric=\"sqeuclidean\", bool largest=False) "
        "-> (Tensor values, Tensor indices)");
  m.def("_pairwise_topk_backward(Tensor grad_values, Tensor x, Tensor y, Tensor indices, str metric, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
  // Anchors are the embeddings [anchor_begin, anchor_end) (anchor_end -1: N); max_triplets -1:
  // no cap. Returns (anchor, positive, negative) int64 indices into embeddings.
  m.def("_mine_triplets(Tensor embeddings, Tensor labels, str strategy, float margin, str metric, "
        "int max_triplets, int anchor_begin, int anchor_end) -> (Tensor, Tensor, Tensor)");
  // reduction: 0 = none, 1 = mean, 2 = sum.
  m.def("_triplet_loss(Tensor anchor, Tensor positive, Tensor negative, float margin, str metric, float eps, "
        "bool swap, bool soft, int reduction) -> Tensor");
  m.def("_triplet_loss_backward(Tensor grad, Tensor anchor, Tensor positive, Tensor negative, float margin, "
        "str metric, float eps, bool swap, bool soft, int reduction) -> (Tensor, Tensor, Tensor)");
  // The mean over triplets (rows of embeddings by index) of max(0, d_ap - d_an + margin) or
  // softplus(d_ap - d_an); 0 when there is none. Behind batch_hard_triplet_loss.
  m.def("_triplet_loss_indexed(Tensor embeddings, Tensor anchor, Tensor positive, Tensor negative, float margin, "
        "str metric, bool soft) -> Tensor");
  m.def("_triplet_loss_indexed_backward(Tensor grad, Tensor embeddings, Tensor anchor, Tensor positive, "
        "Tensor negative, float margin, str metric, bool soft) -> Tensor");
  // The k-means assignment step: for every row of x (N, D) the index of its nearest centroid
  // (K, D) (the first of equally near ones) and the squared distance to it. Not differentiable.
  m.def("_kmeans_assign(Tensor x, Tensor centroids) -> (Tensor labels, Tensor distances)");
  // The hierarchical triplet loss from the euclidean distances (N, N) of a batch, the class
  // position of every row (N,) int64 and the margin table (P, P) (distance_hierarchical.h).
  m.def("_hierarchical_triplet_loss(Tensor distances, Tensor classes, Tensor margins) -> Tensor");
  m.def("_hierarchical_triplet_loss_backward(Tensor grad, Tensor distances, Tensor classes, Tensor margins) "
        "-> Tensor");
  m.def("_contrastive_loss(Tensor x1, Tensor x2, Tensor same, float margin, int reduction) -> Tensor");
  m.def("_contrastive_loss_backward(Tensor grad, Tensor x1, Tensor x2, Tensor same, float margin, "
        "int reduction) -> (Tensor, Tensor)");
}
