# waybill -- build, run, test. `make run` and `make test` are the whole set-up
# on a fresh Debian 12 machine: missing packages are installed first.

CC      ?= cc
PKGS    := libevent libevent_openssl libcurl openssl jansson lua5.4 sqlite3 libpq
DEBS    := build-essential pkg-config libevent-dev libcurl4-openssl-dev libssl-dev \
           libjansson-dev liblua5.4-dev libsqlite3-dev libmimalloc-dev \
           libhttp-parser-dev libpq-dev
TESTDEBS := curl python3 nodejs npm openssl chromium postgresql pgbouncer faketime
BENCHDEBS := wrk webhook

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wold-style-definition -Wwrite-strings -Wundef -Wformat=2
ifeq ($(WERROR),1)
WARN    += -Werror
endif
ifeq ($(CI),true)
WARN    += -Werror
endif

OPT     ?= -O2 -g
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -MMD -MP $(SANFLAGS) \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
# mimalloc replaces glibc's malloc (linked first, kept even though nothing
# calls it by name); not under the sanitizers, which bring their own.
MALLOC_LIBS := $(if $(SANFLAGS),,-Wl,--push-state,--no-as-needed -lmimalloc -Wl,--pop-state)
LDLIBS_ALL = $(MALLOC_LIBS) $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread -lm $(LDLIBS)

BUILD   ?= build
BIN     ?= waybill
SRCS    := $(wildcard core/*.c)
WEB     := $(sort $(wildcard core/web/*))
OBJS    := $(SRCS:core/%.c=$(BUILD)/%.o) $(BUILD)/web_assets.o
LIBOBJS := $(filter-out $(BUILD)/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
# Built with the unit tests, run by tests/integration/test_pg_ops.py against a
# real PostgreSQL (it needs one, and fails without): not in the unit run.
UNIT_DB   := %/test_store_pg_ops
UNIT_RUN  := $(filter-out $(UNIT_DB),$(UNIT_BINS))

.PHONY: all help deps install run test test-pg test-unit test-integration asan tsan bench format format-check clean \
        check layers lint test-deps fuzz torture

all: deps $(BIN)

# Every compile waits for deps (an order-only prerequisite: it never makes a
# file out of date), so `make -j2` cannot race the apt-get install.

help:
	@echo "make [all]        install missing Debian packages (as root) and build ./waybill"
	@echo "make run          start the gateway on examples/waybill.lua (store and pid in .run/)"
	@echo "make test         build and run every test (unit, rules, integration): N passed, N failed"
	@echo "make test-pg      the integration tests on PostgreSQL (run.py --store postgresql; K=PATTERN selects)"
	@echo "make test-unit    the C unit tests only"
	@echo "make test-integration  the integration tests only (K=PATTERN selects)"
	@echo "make check        the same as make test"
	@echo "make asan         the whole suite under AddressSanitizer and UBSan"
	@echo "make tsan         the store's unit tests under ThreadSanitizer"
	@echo "make fuzz         the libFuzzer targets, FUZZ_SECONDS each (clang installed when missing)"
	@echo "make bench        the benchmarks (~7 min; BENCH_INSTALL=1 installs wrk and webhook)"
	@echo "make torture      the torture suite, full form (~20 min): one table; its short form is in make test"
	@echo "make lint         the format check and the layers check"
	@echo "make format       clang-format every C file in place"
	@echo "make format-check the format check alone"
	@echo "make layers       the include-layers check alone (tests/layers.py)"
	@echo "make deps         install the missing Debian packages the build needs"
	@echo "make test-deps    install what the tests need (Debian packages, npm modules)"
	@echo "make install      binary, Lua library, man page, systemd unit into DESTDIR/PREFIX (default /usr)"
	@echo "make clean        remove the builds, binaries and benchmark output"
	@echo "make help         this list"

# Installs the Debian -dev packages the build needs, when missing.
deps:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
	  grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null \
	    || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else echo "missing Debian packages; run: sudo apt-get install$$missing"; exit 1; fi; fi

$(BIN): $(OBJS)
	$(CC) $(CFLAGS_ALL) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/%.o: core/%.c | $(BUILD) deps
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

# The dashboard's files (core/web/), embedded: a generated C file.
$(BUILD)/web_assets.c: $(WEB) tests/webembed.sh | $(BUILD)
	sh tests/webembed.sh $(WEB) > $@.tmp && mv $@.tmp $@

$(BUILD)/web_assets.o: $(BUILD)/web_assets.c | $(BUILD) deps
	$(CC) $(CFLAGS_ALL) -Icore -c -o $@ $<

# A unit test links only the modules its includes reach (tests/layers.py
# --objs): nothing of a layer above what it tests, so the link line is the
# proof that the arrows hold.
$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJS) tests/layers.py | $(BUILD) deps
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS_ALL) -Icore -Itests -o $@ $< \
	  $(addprefix $(BUILD)/,$(addsuffix .o,$(shell python3 tests/layers.py --objs $<))) \
	  $(LDLIBS_ALL)

$(BUILD):
	@mkdir -p $(BUILD)

# The admin API's OpenAPI document is embedded in the binary (.incbin).
$(BUILD)/admin_openapi.o: core/web/openapi.json
$(BUILD)/admin_openapi.o: CFLAGS += -DWAYBILL_OPENAPI_FILE='"$(CURDIR)/core/web/openapi.json"'

-include $(OBJS:.o=.d)

# Packages and npm modules the tests use (sinks verifying with the
# standardwebhooks package, Express receivers as the seeds write them; the
# carriers' own SDKs and OpenAPI document, whose value sets the adapters are
# checked against; PostgreSQL 15 and PgBouncer, which tests/integration/pg.py starts).
test-deps: deps
	@missing=""; for p in $(TESTDEBS); do command -v $$p >/dev/null 2>&1 || \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null \
	    || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else echo "missing: sudo apt-get install$$missing"; exit 1; fi; fi
	@ok=1; for m in standardwebhooks express shipengine-openapi @aftership/tracking-sdk @easypost/api \
	  shippo ajv puppeteer-core axe-core; do [ -d tests/node_modules/$$m ] || ok=0; done; \
	  [ $$ok = 1 ] || (cd tests && npm ci --no-audit --no-fund --silent)

# exec: the gateway replaces the recipe's shell (its pid is in .run/waybill.pid).
run: all
	exec ./$(BIN) serve -c examples/waybill.lua

test-unit: all $(UNIT_BINS)
	@python3 tests/run.py --bin ./$(BIN) --unit "$(UNIT_RUN)" --unit-only

test-integration: test-deps all
	@python3 tests/run.py --bin ./$(BIN) $(if $(K),-k $(K))

test: test-deps all $(UNIT_BINS)
	@python3 tests/run.py --bin ./$(BIN) --unit "$(UNIT_RUN)" --torture

check: test

# The same integration suite with every gateway on PostgreSQL (a fresh
# database each, one PostgreSQL 15 per runner worker; tests about SQLite
# itself are skipped with their reason). WB_STORE=postgresql does the same
# for any target that runs tests/run.py, e.g. `WB_STORE=postgresql make asan`.
# test_pg_ops.py drives the unit binary test_store_pg_ops: built here too.
test-pg: test-deps all $(BUILD)/tests/test_store_pg_ops
	@python3 tests/run.py --bin ./$(BIN) --store postgresql $(if $(K),-k $(K))

# AddressSanitizer + UndefinedBehaviorSanitizer over the whole suite.
asan: test-deps
	@$(MAKE) --no-print-directory BUILD=build-asan BIN=waybill-asan OPT="-O1 -g" \
	  SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DWAYBILL_CHECKS" \
	  waybill-asan $(UNIT_SRCS:tests/unit/%.c=build-asan/tests/%)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  python3 tests/run.py --bin ./waybill-asan --asan --torture \
	  --unit "$(filter-out $(UNIT_DB),$(UNIT_SRCS:tests/unit/%.c=build-asan/tests/%))"

# ThreadSanitizer over the store's unit tests: the store runs a sync thread
# and a checkpoint thread beside the loop. Invariant checks on too: the
# SQLite code itself (test_store), its backend ops (test_store_sqlite_ops)
# and store.h's calls through the engine over it (test_store_done). The last
# line is `N passed, N failed` (a race makes the binary exit 66: a failure).
# Each -k glob matches a unit binary's name whole (no integration test).
TSAN_UNITS := build-tsan/tests/test_store build-tsan/tests/test_store_sqlite_ops \
              build-tsan/tests/test_store_done

tsan: deps
	@$(MAKE) --no-print-directory BUILD=build-tsan OPT="-O1 -g" \
	  SANFLAGS="-fsanitize=thread -fno-omit-frame-pointer -DWAYBILL_CHECKS" $(TSAN_UNITS)
	@TSAN_OPTIONS="second_deadlock_stack=1 history_size=4" \
	  python3 tests/run.py --unit "$(TSAN_UNITS)" -k 'test_stor[e]' -k 'test_store_sqlite_op[s]' \
	  -k 'test_store_don[e]'

# libFuzzer targets (tests/fuzz/fuzz_*.c: signature headers, Stripe-style
# header, Shiptify body, JWKS, every adapter, the JSON decoder against
# jansson, the webhook HTTP layer), built with clang (installed when missing) and run FUZZ_SECONDS
# each; then the differential JSON test against Node with
# WB_JSONDIFF_COUNT documents (default 5000) of a fresh seed (printed on a
# failure; WB_JSONDIFF_SEED repeats it). Last line: `N passed, N failed`.
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 10

fuzz: deps
	@command -v clang >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing: clang"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang) >/dev/null \
	    || { echo "apt-get install clang failed"; exit 1; }; \
	  else echo "missing: sudo apt-get install clang"; exit 1; fi; }
	@$(MAKE) --no-print-directory CC=clang CI= WERROR= BUILD=build-fuzz OPT="-O1 -g" \
	  SANFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  $(FUZZ_TARGETS:%=build-fuzz/fuzz/%)
	@$(MAKE) --no-print-directory all test-deps
	@# both parts, then one "N passed, N failed" line summing them (what CI reads)
	@rc=0; bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS) > build-fuzz/fuzz.out 2>&1 || rc=1; \
	  cat build-fuzz/fuzz.out; \
	  WB_JSONDIFF_COUNT=$${WB_JSONDIFF_COUNT:-5000} WB_JSONDIFF_SEED=$${WB_JSONDIFF_SEED:-$$(date +%s)} \
	  python3 tests/run.py --bin ./$(BIN) -k test_json_sent_is_what_node_writes \
	    > build-fuzz/jsondiff.out 2>&1 || rc=1; \
	  cat build-fuzz/jsondiff.out; \
	  tail -n1 -q build-fuzz/fuzz.out build-fuzz/jsondiff.out | awk '{p += $$1; f += $$3} \
	    END {printf "%d passed, %d failed\n", p, f}'; exit $$rc

$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIBOBJS) | $(BUILD) deps
	@mkdir -p $(BUILD)/fuzz
	$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer -Icore -o $@ $< $(LIBOBJS) $(LDLIBS_ALL)

# The torture suite (issue 18, tests/torture/): crashes, a full disk, slow
# and many clients, hostile receivers, malformed HTTP, clock jumps, reload
# storms, a corrupted store and a 10-minute soak, one table (~20 min; the
# short form runs in make test). TORTURE_OUT=file also writes the table there.
# The soak's load is wrk (skipped without it; BENCH_INSTALL=1 installs it).
torture: test-deps all
	@command -v wrk >/dev/null 2>&1 || { if [ -n "$(BENCH_INSTALL)" ] && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || echo "apt-get install wrk failed"; \
	  else echo "torture: wrk missing, the soak will be skipped (BENCH_INSTALL=1 installs it)"; fi; }
	@python3 tests/torture/torture.py --bin ./$(BIN) $(if $(TORTURE_OUT),--out $(TORTURE_OUT)) $(if $(K),-k $(K))

# OLD_BIN=path runs that waybill binary beside ./waybill (before/after ratios).
bench: all
	@bash tests/bench/run.sh $(if $(OLD_BIN),--old-bin $(OLD_BIN))

format:
	clang-format -i core/*.c core/*.h tests/unit/*.c tests/*.h tests/bench/*.c tests/torture/*.c

format-check:
	clang-format --dry-run -Werror core/*.c core/*.h tests/unit/*.c tests/*.h tests/bench/*.c tests/torture/*.c

# The include arrows of core/ run one way (tests/layers.py: the layer list,
# no arrow up, no cycle); its last line is `N passed, N failed`.
layers:
	@python3 tests/layers.py

# Format and layers; the last line is one `N passed, N failed`.
lint:
	@command -v clang-format >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing: clang-format"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-format) \
	    >/dev/null || { echo "apt-get install clang-format failed"; exit 1; }; \
	  else echo "missing: sudo apt-get install clang-format"; exit 1; fi; }
	@if clang-format --dry-run -Werror core/*.c core/*.h tests/unit/*.c tests/*.h \
	  tests/bench/*.c tests/torture/*.c 2>/dev/null; then fmt=0; else fmt=1; \
	  echo "FAIL format: run make format (make format-check shows where)"; fi; \
	out=$$(python3 tests/layers.py); rc=$$?; echo "$$out" | sed '$$d'; \
	last=$$(echo "$$out" | tail -n 1); p=$${last%% passed*}; f=$${last#*passed, }; f=$${f%% failed*}; \
	echo "$$((p + 1 - fmt)) passed, $$((f + fmt)) failed"; [ $$fmt = 0 ] && [ $$rc = 0 ]

# The binary, its Lua library, the man page and the systemd unit under
# $(DESTDIR)$(PREFIX) (the binary finds its library in ../share/waybill/lua
# beside its bin/, so any PREFIX works; the unit's ExecStart follows PREFIX).
PREFIX  ?= /usr
UNITDIR ?= $(PREFIX)/lib/systemd/system

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/waybill/lua/sources \
	  $(DESTDIR)$(PREFIX)/share/waybill/rules $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/waybill
	install -m 0644 lua/*.lua $(DESTDIR)$(PREFIX)/share/waybill/lua/
	install -m 0644 lua/sources/*.lua $(DESTDIR)$(PREFIX)/share/waybill/lua/sources/
	install -m 0644 rules/*.lua $(DESTDIR)$(PREFIX)/share/waybill/rules/
	install -m 0644 examples/waybill.1 $(DESTDIR)$(PREFIX)/share/man/man1/waybill.1
	sed 's|^ExecStart=/usr/bin/waybill |ExecStart=$(PREFIX)/bin/waybill |' examples/waybill.service \
	  > $(DESTDIR)$(UNITDIR)/waybill.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/waybill.service

clean:
	rm -rf build build-asan build-tsan build-fuzz waybill waybill-asan tests/bench/out
