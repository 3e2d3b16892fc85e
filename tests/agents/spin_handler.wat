;; spin_handler (test-only, hostile): loops forever in its message handler
;; (handler), with no limits set in the scenario: the runtime's defaults must stop it.
(module
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (func $spin (loop $l (global.set $n (i64.add (global.get $n) (i64.const 1))) (br $l)))

  (func (export "qh_abi_version") (result i32) (i32.const 1))

  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32) (call $spin) (i32.const 0))
)
