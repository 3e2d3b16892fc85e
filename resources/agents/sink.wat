;; sink: gathers results. Kind 2 carries one little-endian i64 that it adds to a running sum;
;; the runtime's task-finished notice (kind 0x7F000001) is counted and logged. Others are ignored.
(module
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)
  (global $results (export "results") (mut i64) (i64.const 0))
  (global $sum (export "sum") (mut i64) (i64.const 0))
  (global $tasks (export "tasks") (mut i64) (i64.const 0))
  (data (i32.const 256) "sink: a task finished")

  (func (export "qh_abi_version") (result i32) (i32.const 1))

  (func (export "qh_alloc") (param $size i32) (result i32)
    (local $need i32) (local $have i32)
    (local.set $need (i32.add (i32.const 1024) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $need) (local.get $have))
      (then
        (drop (memory.grow
          (i32.add (i32.shr_u (i32.sub (local.get $need) (local.get $have)) (i32.const 16))
                   (i32.const 1))))))
    (i32.const 1024))

  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (if (i32.eq (local.get $kind) (i32.const 2))
      (then
        (if (i32.lt_u (local.get $len) (i32.const 8)) (then (return (i32.const 1))))
        (global.set $sum (i64.add (global.get $sum) (i64.load (local.get $ptr))))
        (global.set $results (i64.add (global.get $results) (i64.const 1)))
        (return (i32.const 0))))
    (if (i32.eq (local.get $kind) (i32.const 0x7F000001))
      (then
        (global.set $tasks (i64.add (global.get $tasks) (i64.const 1)))
        (call $log (i32.const 20) (i32.const 256) (i32.const 21))))
    (i32.const 0))
)
