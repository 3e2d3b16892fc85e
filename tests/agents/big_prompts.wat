;; big_prompts (test-only): kind 1 from the runtime asks the LLM 4 times with a 60 KiB prompt
;; (under the 64 KiB quota, longer than any test model's context); each LLM_DONE answer's
;; text (after its 12-byte header) is logged.
(module
  (import "qhybrid" "llm_complete" (func $llm (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 3)
  ;; 4096..65536: the prompt, "ab" repeated
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 131072))
  (func (export "qh_on_message") (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32)
    (result i32)
    (local $i i32)
    (if (i32.eq (local.get $kind) (i32.const 0x7F000003)) (then
      (call $log (i32.const 20) (i32.add (local.get $ptr) (i32.const 12))
        (i32.sub (local.get $len) (i32.const 12)))
      (return (i32.const 0))))
    (if (i32.ne (local.get $from) (i32.const -1)) (then (return (i32.const 0))))
    (local.set $i (i32.const 4096))
    (loop $fill
      (i32.store16 (local.get $i) (i32.const 0x6261))
      (local.set $i (i32.add (local.get $i) (i32.const 2)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65536))))
    (local.set $i (i32.const 0))
    (loop $ask
      (drop (call $llm (i32.const 4096) (i32.const 61440) (i32.const 4) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $ask (i32.lt_u (local.get $i) (i32.const 4))))
    (i32.const 0)))
