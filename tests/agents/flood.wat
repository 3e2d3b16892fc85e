;; flood (test-only, hostile): floods the host from one message, by kind.
;;   kind 1   sends 1 000 000 empty messages to itself (1M sends cost the host ~1 GB)
;;   kind 2   sends 70 messages of 16 MiB each to itself (1.1 GB from one handler)
;;   kind 3   logs 200 000 lines of 32 bytes (6.4 MB) through WASI stdout
;;   kind 4   creates 64 tensors of 1 GiB each (64 GiB asked for)
;;   kind 5   asks the LLM 100 times
;;   kind 6   asks the LLM once with a 1 MiB prompt
;;   kind 7   logs one short line (a well-behaved message)
;;   kind 8   creates one tensor of 64 MiB (float32, 2^24 elements) named "t00"
;;   kind 10  asks the LLM 10 times (under the per-message quota), 2 tokens each
;; The sender must be the runtime (-1) or nothing is done: sent messages are not re-handled.
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "self_id" (func $self (result i32)))
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (import "qhybrid" "tensor_create" (func $tcreate (param i32 i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "llm_complete" (func $llm (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; 1024: a log line; 2048: an iovec; 2100: a tensor name; 2200: a shape (4 x i32);
  ;; 4096..: 16 MiB + 1 MiB of zeros for payloads and prompts
  (memory (export "memory") 280)
  (data (i32.const 1024) "flood: one line of thirty-two b\n")
  (data (i32.const 2100) "t00")
  (data (i32.const 2200) "\00\00\00\10\01\00\00\00\01\00\00\00\01\00\00\00")
  (data (i32.const 2216) "\00\00\00\01")
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 512))
  (func (export "qh_on_message") (param $from i32) (param $kind i32) (param i32) (param i32)
    (result i32)
    (local $i i32)
    (if (i32.ne (local.get $from) (i32.const -1)) (then (return (i32.const 0))))
    (if (i32.eq (local.get $kind) (i32.const 1)) (then
      (loop $l
        (drop (call $send (call $self) (i32.const 9) (i32.const 4096) (i32.const 0)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))))
    (if (i32.eq (local.get $kind) (i32.const 2)) (then
      (loop $l
        (drop (call $send (call $self) (i32.const 9) (i32.const 4096) (i32.const 16777216)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 70))))))
    (if (i32.eq (local.get $kind) (i32.const 3)) (then
      (i32.store (i32.const 2048) (i32.const 1024))
      (i32.store (i32.const 2052) (i32.const 32))
      (loop $l
        (drop (call $fd_write (i32.const 1) (i32.const 2048) (i32.const 1) (i32.const 2060)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 200000))))))
    (if (i32.eq (local.get $kind) (i32.const 4)) (then
      (loop $l
        ;; a distinct name per tensor: "t" and two digits
        (i32.store8 (i32.const 2101) (i32.add (i32.const 48) (i32.div_u (local.get $i) (i32.const 10))))
        (i32.store8 (i32.const 2102) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
        ;; float32 (code 0), 1 dim of 2^28 elements: 1 GiB
        (drop (call $tcreate (i32.const 2100) (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 2200)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 64))))))
    (if (i32.eq (local.get $kind) (i32.const 5)) (then
      (loop $l
        (drop (call $llm (i32.const 1024) (i32.const 10) (i32.const 4) (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))))
    (if (i32.eq (local.get $kind) (i32.const 6)) (then
      (drop (call $llm (i32.const 4096) (i32.const 1048576) (i32.const 4) (i32.const 0)))))
    (if (i32.eq (local.get $kind) (i32.const 10)) (then
      (loop $l
        (drop (call $llm (i32.const 1024) (i32.const 10) (i32.const 2) (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))))
    (if (i32.eq (local.get $kind) (i32.const 8)) (then
      (drop (call $tcreate (i32.const 2100) (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 2216)))))
    (if (i32.eq (local.get $kind) (i32.const 7)) (then
      (call $log (i32.const 20) (i32.const 1024) (i32.const 31))))
    (i32.const 0))
)
