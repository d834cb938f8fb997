# embedd build.
#   make                      build/embedd
#   make test                 build and run every Check suite
#   make check                make test, plus the suites under ASan, UBSan and TSan
#   make SANITIZER=address    the same, into build-address/ (also: undefined, thread)
#   make bench                embedd against PyTorch, same run: inference
#                             (scripts/bench.py) and SimCSE training steps
#                             (scripts/bench_train.py)
CC       ?= cc
SANITIZER ?=
BUILD    ?= build$(if $(SANITIZER),-$(SANITIZER),)
PKGS     := libmicrohttpd libcjson libcurl libutf8proc libpq
OPT      ?= -O2
# OpenBLAS's OpenMP build: BLAS calls and our own OpenMP loops share one
# thread pool instead of two sets of threads spinning against each other.
BLAS_DIR ?= /usr/lib/$(shell gcc -print-multiarch)/openblas-openmp
BLAS_INC ?= /usr/include/$(shell gcc -print-multiarch)/openblas-openmp
CFLAGS   += $(OPT) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -pthread -fopenmp -I$(BLAS_INC) $(shell pkg-config --cflags $(PKGS))
# server/store/hnsw.cpp: the wrapper over Debian's header-only hnswlib (server/store/hnsw.h).
CXXFLAGS += $(OPT) -g -std=c++17 -Wall -Wextra -Wno-unused-parameter -pthread -fopenmp
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas \
            -lstdc++ -lmvec -lm -pthread -fopenmp
ifneq ($(SANITIZER),)
CFLAGS   += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
# hnswlib reads its u64 labels at 4-byte offsets, its SSE prefetches read
# one link past a list's end (harmless, but ASan stops on it), and it
# memcpy()s zero bytes from an empty vector's NULL data() (hnswalg.h,
# getConnectionsWithLock: harmless, but UBSan's nonnull check stops on it).
CXXFLAGS += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all \
            -DNO_MANUAL_VECTORIZATION \
            $(if $(filter undefined,$(SANITIZER)),-fno-sanitize=alignment -fno-sanitize=nonnull-attribute)
LDFLAGS  += -fsanitize=$(SANITIZER)
OPT      := -O1
endif
CHECK_LIBS := $(shell pkg-config --libs check)

MODEL_SRC  := $(wildcard model/*.c model/base/*.c)
SERVER_SRC := $(wildcard server/*/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
MODEL_OBJ  := $(MODEL_SRC:%.c=$(BUILD)/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o) $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard server/*/*.cpp))
# server objects other than main, linkable into tests
SERVER_LIB_OBJ := $(filter-out $(BUILD)/server/cli/main.o,$(SERVER_OBJ))
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# make test TESTS="batcher server" runs only those suites.
TESTS ?=
# Suites that drive the server from outside and mostly time other programs run in the
# plain pass only, unless named: test_cluster (PostgreSQL, three replicas, haproxy: a
# minute or more), test_browser (chromium) and test_readme (the README's commands); the
# routes they reach are run under the sanitizers by test_server, test_tei and test_qdrant.
# test_clients (the Node clients) runs under ASan too, not under UBSan.
PLAIN_ONLY := test_cluster test_browser test_readme $(if $(filter undefined,$(SANITIZER)),test_clients,)
RUN_TESTS  := $(if $(TESTS),$(TESTS:%=$(BUILD)/tests/test_%),$(if $(SANITIZER),$(filter-out $(PLAIN_ONLY:%=$(BUILD)/tests/%),$(TEST_BIN)),$(TEST_BIN)))

# Tests read the shared data set from beside the checkout unless told otherwise.
export EMBEDD_SHARED_DATA ?= $(abspath ../shared/data)
# The old OpenBLAS misdetects this CPU; tests and CI keep the safe kernel.
export OPENBLAS_CORETYPE ?= Haswell

.PHONY: all test check bench clean
all: $(BUILD)/embedd

# The encoder library sees only itself: model/ never includes server/.
$(BUILD)/model/%.o: model/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Imodel -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Imodel -Iserver -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -Imodel -Iserver -MMD -MP -c $< -o $@

# The numeric kernels want the vectoriser's full effort.
$(BUILD)/model/ops.o: OPT := $(if $(SANITIZER),-O1,-O3)

# The console, docs page and OpenAPI document are embedded with .incbin
# (server/web/assets.c); -MMD does not see those files, so list them here.
WEB_ASSETS := $(wildcard server/web/*.html server/web/*.json)
$(BUILD)/server/web/assets.o build-fuzz/obj/server/web/assets.o: $(WEB_ASSETS)

$(BUILD)/libembedd_model.a: $(MODEL_OBJ)
	ar rcs $@ $^

$(BUILD)/embedd: $(SERVER_OBJ) $(BUILD)/libembedd_model.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/serverproc.o $(SERVER_LIB_OBJ) $(BUILD)/libembedd_model.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

test: $(BUILD)/embedd $(RUN_TESTS)
	@fail=0; for t in $(RUN_TESTS); do \
	  echo "== $$t"; \
	  EMBEDD_BIN=$(abspath $(BUILD)/embedd) CK_DEFAULT_TIMEOUT=120 $$t || fail=1; \
	done; \
	if [ $$fail -ne 0 ]; then echo "some test suites failed"; exit 1; fi

# Everything CI runs: the folder layering (scripts/check_layers.py), the suites plain (the
# cluster of PostgreSQL, replicas and haproxy included), a short crash round (five SIGKILLs
# of a loaded server with torn log tails, about 10 s: scripts/crash_test.py),
# the suites under ASan and UBSan, the batcher, the sample buffer, the WAL's
# group commit and the GEMM pool under TSan (one OpenMP thread: libgomp is
# not instrumented), and the Docker round trip (skipped, saying why, where
# dockerd cannot start).
check:
	/usr/bin/python3 scripts/check_layers.py > /dev/null
	$(MAKE) test
	timeout 120 /usr/bin/python3 scripts/crash_test.py --rounds 5 --clients 4 --max-delay 1.5 --tear 0.6
	$(MAKE) test SANITIZER=address
	$(MAKE) test SANITIZER=undefined
	OMP_NUM_THREADS=1 CK_FORK=no $(MAKE) test SANITIZER=thread TESTS="batcher samples wal pool"
	scripts/docker-test.sh

bench: $(BUILD)/embedd
	scripts/install-deps.sh --bench
	/usr/bin/python3 scripts/bench.py --binary $(BUILD)/embedd $(BENCH_ARGS)
	/usr/bin/python3 scripts/bench_train.py --binary $(BUILD)/embedd $(BENCH_TRAIN_ARGS)

# scripts/bench_gemm.c: emb_gemm against OpenBLAS on the layer shapes (BENCH_GEMM_ARGS: see its header).
.PHONY: bench-gemm
$(BUILD)/bench_gemm: scripts/bench_gemm.c $(BUILD)/libembedd_model.a
	$(CC) $(CFLAGS) -Imodel -o $@ $^ $(LDFLAGS) $(LDLIBS)
bench-gemm: $(BUILD)/bench_gemm
	env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=$${BENCH_GEMM_CORETYPE:-SkylakeX} $(BUILD)/bench_gemm $(BENCH_GEMM_ARGS)

# libFuzzer targets (clang): make fuzz FUZZ_SECONDS=60 [FUZZ_TARGETS="wal http"]
#   tokenizer, safetensors, config   the model files' parsers (a few model/ files)
#   wal    the store's recovery: the input as DATA/wal (and DATA/snapshot), opened,
#          written to and reopened (tests/fuzz/fuzz_wal.c)
#   http   the whole request path: the real server started in-process on a loopback
#          port, each input sent as raw bytes (tests/fuzz/fuzz_http.c)
#   jsoncheck  the strict body check before cJSON (server/http/jsoncheck.c): what
#          it passes decodes to valid UTF-8 (tests/fuzz/fuzz_jsoncheck.c)
# wal and http link every server/ and model/ object, built with the fuzzer's
# sanitizers into build-fuzz/obj/ (OpenBLAS, libmicrohttpd, ... link as usual).
# There OpenMP pragmas are off (clang's runtime would be a second one beside
# OpenBLAS's libgomp), and the kernels written with GCC's vector builtins
# (FUZZ_GCC_SRC) are compiled by gcc, uninstrumented.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= tokenizer safetensors config jsoncheck wal http
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Imodel \
                $(shell pkg-config --cflags libcjson libutf8proc)
FUZZ_LIBS    := $(shell pkg-config --libs libcjson libutf8proc) -lm
FUZZ_MODEL   := model/base/error.c model/tokenizer.c model/safetensors.c model/config.c
FUZZ_SAN     := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_OBJ_CFLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wno-unused-parameter -Wno-unknown-pragmas -pthread \
                $(FUZZ_SAN) -I$(BLAS_INC) $(shell pkg-config --cflags $(PKGS)) -Imodel -Iserver
# hnswlib: see SANITIZER above (unaligned u64 labels, SSE prefetch past a list's end);
# no vptr/function checks, which need the C++ UBSan runtime that a C link lacks.
FUZZ_OBJ_CXXFLAGS := -g -O1 -std=c++17 -pthread $(FUZZ_SAN) -DNO_MANUAL_VECTORIZATION \
                -fno-sanitize=alignment,vptr,function -Imodel -Iserver
FUZZ_OBJ     := $(patsubst %.c,build-fuzz/obj/%.o,$(MODEL_SRC) $(filter-out server/cli/main.c,$(SERVER_SRC))) \
                $(patsubst %.cpp,build-fuzz/obj/%.o,$(wildcard server/*/*.cpp))
FUZZ_GCC_SRC := model/ops.c model/ops_train.c
FUZZ_LDLIBS  := $(filter-out -fopenmp,$(LDLIBS)) -lgomp
.PHONY: fuzz
$(FUZZ_GCC_SRC:%.c=build-fuzz/obj/%.o): build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Imodel -MMD -MP -c $< -o $@
build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_OBJ_CFLAGS) -MMD -MP -c $< -o $@
build-fuzz/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	clang++ $(FUZZ_OBJ_CXXFLAGS) -MMD -MP -c $< -o $@
build-fuzz/fuzz_wal build-fuzz/fuzz_http: build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	clang $(FUZZ_OBJ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(FUZZ_LDLIBS)
build-fuzz/fuzz_jsoncheck: tests/fuzz/fuzz_jsoncheck.c server/http/jsoncheck.c
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -Iserver -o $@ $^ $(FUZZ_LIBS)
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_MODEL)
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_MODEL) $(FUZZ_LIBS)
fuzz: $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus-$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS)s"; \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=30 \
	    -artifact_prefix=build-fuzz/crash-$$t- \
	    build-fuzz/corpus-$$t tests/fuzz/seeds-$$t || exit 1; \
	done

-include $(FUZZ_OBJ:.o=.d)

clean:
	rm -rf build build-*

-include $(MODEL_OBJ:.o=.d) $(SERVER_OBJ:.o=.d) $(TEST_BIN:=.d)

# scripts/docker-test.sh: builds the image (on locally made debian base images)
# and runs it through /health, /embed, /items, /similar, a graceful stop and a
# restart on the same volume; prints SKIPPED when dockerd cannot start.
.PHONY: docker-test
docker-test:
	scripts/docker-test.sh

# scripts/cluster-test.sh (issue 18): docker-compose.yml's cluster (PostgreSQL,
# three replicas, haproxy) built, brought up, checked with a replica killed and
# restarted, and torn down; prints SKIP when dockerd cannot start.
.PHONY: cluster-test
cluster-test:
	scripts/cluster-test.sh

# scripts/bench_compare.py: embedd against ONNX Runtime (npm onnxruntime-node, installed into
# bench-out/ort/ on first use), same model, texts and run, A B A B (BENCH_COMPARE_ARGS:
# --shapes minilm,bge-small --rounds 3 --threads 2; see the script's header).
.PHONY: bench-compare
bench-compare: $(BUILD)/embedd $(BUILD)/bench_gemm
	/usr/bin/python3 scripts/bench_compare.py --binary $(BUILD)/embedd \
	  --peak-binary $(BUILD)/bench_gemm $(BENCH_COMPARE_ARGS)

# scripts/bench_cluster.py: /embed through haproxy with 1, 2 and 3 replicas over a throwaway
# PostgreSQL, and write/search latency against the local store (BENCH_CLUSTER_ARGS: see its header).
.PHONY: bench-cluster
bench-cluster: $(BUILD)/embedd
	/usr/bin/python3 scripts/bench_cluster.py --binary $(BUILD)/embedd $(BENCH_CLUSTER_ARGS)
