// hnsw.cpp: the thin wrapper behind hnsw.h. No C++ exception leaves this file.
#include "hnsw.h"

#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

/* The distance, 1 - <a, b>, compiled for several instruction sets and
 * picked at load time like model/ops.c's hot loops (hnswlib's own kernels
 * are chosen at compile time, so a portable build gets only SSE). Not
 * under ThreadSanitizer: its instrumented ifunc resolvers crash. */
#if defined(__x86_64__) && defined(__GLIBC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define HOT_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define HOT_CLONES
#endif

typedef float v16 __attribute__((vector_size(64)));

HOT_CLONES static float dot(const float *a, const float *b, size_t n)
{
    v16 acc0 = {0};
    v16 acc1 = {0};
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        v16 x0, y0, x1, y1;
        std::memcpy(&x0, a + i, sizeof x0);
        std::memcpy(&y0, b + i, sizeof y0);
        std::memcpy(&x1, a + i + 16, sizeof x1);
        std::memcpy(&y1, b + i + 16, sizeof y1);
        acc0 += x0 * y0;
        acc1 += x1 * y1;
    }
    acc0 += acc1;
    float s = 0;
    for (int j = 0; j < 16; j++)
        s += acc0[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float ip_distance(const void *a, const void *b, const void *dim)
{
    return 1.0f - dot((const float *)a, (const float *)b, *(const size_t *)dim);
}

class dot_space : public hnswlib::SpaceInterface<float> {
public:
    explicit dot_space(size_t dim) : dim_(dim) {}
    size_t get_data_size() override { return dim_ * sizeof(float); }
    hnswlib::DISTFUNC<float> get_dist_func() override { return ip_distance; }
    void *get_dist_func_param() override { return &dim_; }

private:
    size_t dim_;
};

#if defined(__SANITIZE_THREAD__)
// hnswlib 0.6.2's addPoint holds a node's link lock while it takes `global`,
// and an insert that raises the top level holds `global` while it takes link
// locks; ThreadSanitizer calls that a potential deadlock. It needs two
// threads adding to one index, and the store never does that (hnsw.h).
extern "C" const char *__tsan_default_suppressions(void);
extern "C" const char *__tsan_default_suppressions(void)
{
    return "deadlock:hnswlib::HierarchicalNSW\n";
}
#endif

struct hnsw_index {
    int dim;
    dot_space *space;
    hnswlib::HierarchicalNSW<float> *alg;
};

static int fail(emb_err *err, const char *what, const char *msg)
{
    if (err != nullptr)
        std::snprintf(err->msg, sizeof err->msg, "hnsw %s: %s", what, msg);
    return -1;
}

extern "C" hnsw_index *hnsw_create(int dim, size_t max_elements, int M, int ef_construction,
                                   uint64_t seed, emb_err *err)
{
    if (dim < 1) {
        fail(err, "create", "bad dimension");
        return nullptr;
    }
    hnsw_index *h = nullptr;
    try {
        h = new hnsw_index{dim, nullptr, nullptr};
        h->space = new dot_space((size_t)dim);
        h->alg = new hnswlib::HierarchicalNSW<float>(h->space, std::max<size_t>(max_elements, 1),
                                                     M > 0 ? (size_t)M : 16,
                                                     ef_construction > 0 ? (size_t)ef_construction : 200,
                                                     (size_t)seed);
        h->alg->setEf(1);   // searches pass their width as k: see hnsw_search
        return h;
    } catch (const std::exception &e) {
        fail(err, "create", e.what());
    } catch (...) {
        fail(err, "create", "unknown exception");
    }
    hnsw_free(h);
    return nullptr;
}

extern "C" void hnsw_free(hnsw_index *h)
{
    if (h == nullptr)
        return;
    delete h->alg;
    delete h->space;
    delete h;
}

extern "C" int hnsw_reserve(hnsw_index *h, size_t max_elements, emb_err *err)
{
    try {
        size_t cap = h->alg->max_elements_;
        if (max_elements <= cap)
            return 0;
        while (cap < max_elements)
            cap *= 2;
        h->alg->resizeIndex(cap);
        return 0;
    } catch (const std::exception &e) {
        return fail(err, "resize", e.what());
    } catch (...) {
        return fail(err, "resize", "unknown exception");
    }
}

extern "C" int hnsw_add(hnsw_index *h, uint64_t label, const float *v, emb_err *err)
{
    try {
        if (h->alg->cur_element_count >= h->alg->max_elements_ &&
            h->alg->label_lookup_.find(label) == h->alg->label_lookup_.end() &&
            hnsw_reserve(h, h->alg->max_elements_ + 1, err) != 0)
            return -1;
        h->alg->addPoint(v, (hnswlib::labeltype)label);
        return 0;
    } catch (const std::exception &e) {
        return fail(err, "add", e.what());
    } catch (...) {
        return fail(err, "add", "unknown exception");
    }
}

extern "C" int hnsw_add_batch(hnsw_index *h, const uint64_t *labels, const float *vecs, size_t n,
                              emb_err *err)
{
    if (h->alg->cur_element_count + n > h->alg->max_elements_ &&
        hnsw_reserve(h, h->alg->cur_element_count + n, err) != 0)
        return -1;
    std::atomic<int> failed{0};
    std::string msg;
    const long nn = (long)n;
    // Sequential: concurrent addPoint in hnswlib 0.6.2 overflows a heap buffer
    // under ASan (hnswalg.h:214, searchBaseLayer).
    for (long i = 0; i < nn; i++) {
        if (failed.load(std::memory_order_relaxed))
            continue;
        try {
            h->alg->addPoint(vecs + (size_t)i * (size_t)h->dim, (hnswlib::labeltype)labels[i]);
        } catch (const std::exception &e) {
            if (failed.exchange(1) == 0)
                msg = e.what();
        } catch (...) {
            if (failed.exchange(1) == 0)
                msg = "unknown exception";
        }
    }
    if (failed.load())
        return fail(err, "add", msg.c_str());
    return 0;
}

extern "C" int hnsw_mark_delete(hnsw_index *h, uint64_t label, emb_err *err)
{
    try {
        auto it = h->alg->label_lookup_.find((hnswlib::labeltype)label);
        if (it == h->alg->label_lookup_.end() || h->alg->isMarkedDeleted(it->second))
            return 0;
        h->alg->markDelete((hnswlib::labeltype)label);
        return 0;
    } catch (const std::exception &e) {
        return fail(err, "delete", e.what());
    } catch (...) {
        return fail(err, "delete", "unknown exception");
    }
}

// hnswlib 0.6.2 keeps the search width (ef_) in the index, and searchKnn
// uses max(ef_, k). ef_ stays 1, so asking for max(k, ef) results gives the
// width without writing to the index: concurrent searches stay safe.
extern "C" int hnsw_search(const hnsw_index *h, const float *query, int k, int ef,
                           uint64_t *labels, float *dists, emb_err *err)
{
    try {
        if (k < 1)
            return 0;
        size_t width = (size_t)std::max(k, ef);
        auto pq = h->alg->searchKnn(query, width);
        std::vector<std::pair<float, hnswlib::labeltype>> all;
        all.reserve(pq.size());
        while (!pq.empty()) {   // worst first
            all.push_back(pq.top());
            pq.pop();
        }
        int n = (int)std::min(all.size(), (size_t)k);
        for (int i = 0; i < n; i++) {
            const auto &p = all[all.size() - 1 - (size_t)i];
            labels[i] = (uint64_t)p.second;
            dists[i] = p.first;
        }
        return n;
    } catch (const std::exception &e) {
        return fail(err, "search", e.what());
    } catch (...) {
        return fail(err, "search", "unknown exception");
    }
}

extern "C" size_t hnsw_count(const hnsw_index *h)
{
    return h->alg->cur_element_count;
}

extern "C" size_t hnsw_deleted(const hnsw_index *h)
{
    return h->alg->num_deleted_;
}

extern "C" size_t hnsw_capacity(const hnsw_index *h)
{
    return h->alg->max_elements_;
}
